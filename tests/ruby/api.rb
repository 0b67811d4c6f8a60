# Reads everything through Sidekiq's API and Web UI; prints it as JSON.
require_relative "common"
require "sidekiq/api"
require "sidekiq/web"
require "rack/mock"
require "rack/session/cookie"
require "securerandom"

def entry(e)
  { "klass" => e.klass, "display_class" => e.display_class, "args" => e.display_args,
    "jid" => e.jid, "queue" => e.queue, "score" => e.score, "item" => e.item,
    "created_at" => e.created_at.to_f, "backtrace" => e.error_backtrace }
end

stats = Sidekiq::Stats.new
web = Sidekiq::Web.new
app = Rack::Builder.new do
  use Rack::Session::Cookie, secret: SecureRandom.hex(32), same_site: true, max_age: 86_400
  run web
end
# The list pages, and the detail page of each retry and dead job, at the address the list
# pages link to ("<score>-<jid>", the score as Ruby prints a Float).
sets = { "retries" => Sidekiq::RetrySet.new, "morgue" => Sidekiq::DeadSet.new }
details = sets.flat_map do |page, set|
  set.select(&:jid).map { |e| "/#{page}/#{e.score}-#{e.jid}" }
end
pages = (%w[/ /busy /retries /morgue /queues] + details).to_h do |path|
  response = Rack::MockRequest.new(app).get(path)
  [path, { "status" => response.status, "body" => response.body }]
end

out = {
  "stats" => { "processed" => stats.processed, "failed" => stats.failed,
               "retry_size" => stats.retry_size, "dead_size" => stats.dead_size,
               "processes_size" => stats.processes_size, "workers_size" => stats.workers_size,
               "enqueued" => stats.enqueued, "queues" => stats.queues },
  "history" => Sidekiq::Stats::History.new(1).processed,
  "retries" => Sidekiq::RetrySet.new.map { |e| entry(e) },
  "dead" => Sidekiq::DeadSet.new.map { |e| entry(e) },
  "processes" => Sidekiq::ProcessSet.new.map do |p|
    { "identity" => p.identity, "busy" => p["busy"], "stopping" => p.stopping?,
      "hostname" => p["hostname"], "queues" => p.queues, "started_at" => p["started_at"],
      "rss" => p["rss"], "tag" => p.tag, "labels" => p.labels, "beat" => p["beat"],
      "concurrency" => p["concurrency"] }
  end,
  "workers" => Sidekiq::Workers.new.map do |process, thread, work|
    { "process" => process, "thread" => thread, "queue" => work["queue"],
      "jid" => work["payload"]["jid"], "run_at" => work["run_at"] }
  end,
  "pages" => pages,
}
puts JSON.generate(out)
