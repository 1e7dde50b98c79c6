-- lib/time_refused.lua: the error raised for a TIME the ACL refuses.
-- Defines one constant, which costs a script nothing per run (each `local
-- function`, by contrast, is built again on every run).
--
-- An ACL that refuses TIME fails the script; Redis 7.0 then answers "The
-- user executing the script can't run this command", naming no command.
-- So scripts call TIME with pcall and raise this instead, followed by the
-- server's own words and a closing parenthesis.
local TIME_REFUSED = 'NOPERM the user may not run TIME, which atomlimit reads for the server\'s clock: grant +time, or build the limiter with time_source="client" ('
