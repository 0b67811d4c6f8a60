# Pushes jobs the ways a Ruby app does; prints their jids as JSON.
require_relative "common"

queue = ARGV.fetch(0)
single = Sidekiq::Client.push("class" => "PyJob", "args" => [1, {"k" => "v"}], "queue" => queue,
                              "retry" => 5, "tags" => ["ruby"])
bulk = Sidekiq::Client.push_bulk("class" => "PyJob", "args" => [["a"], ["b"], ["c"]],
                                 "queue" => queue)
later = Sidekiq::Client.push("class" => "PyJob", "args" => ["later"], "queue" => queue,
                             "at" => Time.now.to_f + 0.5)
puts JSON.generate("single" => single, "bulk" => bulk, "later" => later)
