"""stanzad's load generator and benchmarks (issue 7); `python -m loadtest --help`.

bounds (limits, loopback only, RLIMIT_NOFILE) · client (the XMPP client: STARTTLS, SCRAM,
bind, stamps) · worker (a load process) · fleet (the coordinator's side of the workers) ·
phases (login, send, collect) · scenarios (idle, login, chat, presence, ramp) · users (bulk
accounts through the admin API, rosters in Redis) · target (the stanzad cluster) · prosody,
ejabberd (private instances of those servers) · procstat (/proc CPU and RSS) · stats
(percentiles) · report (JSON, markdown, plots) · runner (one run) · bench (`make bench`).
Results: RESULTS.md.
"""
