# Ruby enqueues for Python: `ruby enqueue_for_python.rb NAME...` pushes one "Greet" job per name
# to the "python" queue, where `jobrunner run workers:registry` runs it. No Ruby class "Greet"
# is needed: the client only writes the job hash.
require "sidekiq"

Redis.silence_deprecations = true

names = ARGV.empty? ? ["Ada"] : ARGV
names.each do |name|
  jid = Sidekiq::Client.push("class" => "Greet", "queue" => "python",
                             "args" => [{ "name" => name, "from" => "ruby" }])
  puts "enqueued Greet(#{name}) for Python: #{jid}"
end
