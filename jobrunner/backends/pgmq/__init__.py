"""The pgmq backend: jobs in Postgres, in pgmq's tables, enqueued in the caller's transaction."""
