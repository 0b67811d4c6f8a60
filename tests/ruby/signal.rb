# Quiets or stops one process the way the Web UI buttons do: `ruby signal.rb <identity> quiet|stop`.
require_relative "common"
require "sidekiq/api"

identity, action = ARGV
found = Sidekiq::ProcessSet.new.select { |p| p.identity == identity }
found.each { |p| action == "stop" ? p.stop! : p.quiet! }
puts JSON.generate("signalled" => found.size)
