"""The Sidekiq backend: jobs in Redis in Sidekiq's wire format, shared with Ruby Sidekiq."""
