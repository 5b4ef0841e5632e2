"""PostgreSQL, the store of record: accounts, rosters, stored messages and account data.

`database.connect` opens one bounded asyncpg pool per process and applies the migrations
(`migrations.py`) under an advisory lock; `batch.TickLoader` gathers the lookups of one
event-loop tick into one query.  Redis keeps only what may be lost (shared/store/keys.py).
"""
