# Ruby side of the example: job classes for a real Sidekiq server.
#   sidekiq -r ./jobs.rb -q ruby
require "json"
require "sidekiq"

Redis.silence_deprecations = true   # redis-rb 4.8 warns on every SADD Sidekiq sends

# Enqueued from Python (workers.py) as "ThankYou"; Sidekiq runs it like any Ruby job.
class ThankYou
  include Sidekiq::Worker
  sidekiq_options queue: "ruby"

  def perform(args)
    line = JSON.generate("ran" => "ruby ThankYou", "args" => args, "jid" => jid)
    Sidekiq.redis { |conn| conn.rpush("interop_example:log", line) }
  end
end
