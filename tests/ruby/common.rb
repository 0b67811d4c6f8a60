# Shared setup for the interop scripts: Sidekiq 6.4 on REDIS_URL, quiet logs.
require "json"
require "sidekiq"

Redis.silence_deprecations = true
Sidekiq.logger.level = Logger::WARN
