# The Ruby Sidekiq side of the one-INCR drain benchmark (`sidekiq -r <this file>`).
require "sidekiq"

Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

# The same job as bench_app.RedisIncr: one INCR of the counter per job, on Sidekiq's pool.
class RedisIncr
  include Sidekiq::Worker

  COUNTER = ENV.fetch("BENCH_COUNTER")

  def perform(*_args)
    Sidekiq.redis { |conn| conn.incr(COUNTER) }
  end
end
