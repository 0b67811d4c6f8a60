# Job classes for a real `sidekiq` server in the interop tests (`sidekiq -r <this file>`).
require_relative "common"

# Poll the schedule and retry sets often, so tests need not wait 10-15 s for the first poll.
Sidekiq.options[:poll_interval_average] = 1

# Records what it ran: one JSON line per run in the list `interop:ran`.
class RecordJob
  include Sidekiq::Worker

  def perform(*args)
    Sidekiq.redis { |conn| conn.rpush("interop:ran", JSON.generate("jid" => jid, "args" => args)) }
  end
end

class InteropError < StandardError; end

# Always fails, so Sidekiq writes its own retry entry for us to read.
class FailJob
  include Sidekiq::Worker

  def perform(*args)
    raise InteropError, "failed on purpose: #{args.inspect}"
  end
end
