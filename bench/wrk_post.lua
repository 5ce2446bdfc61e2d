-- wrk script: POST one prepared body on every request and print a JSON summary line.
--   WRK_BODY=/path/body.bin WRK_CONTENT_TYPE='multipart/form-data; boundary=x' \
--     wrk -t1 -c8 -d10s -s bench/wrk_post.lua http://127.0.0.1:8000/models/digits/predict
-- The body (a multipart form or a JSON document) is read once per thread at start-up.
local file = assert(io.open(assert(os.getenv("WRK_BODY"), "set WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = assert(os.getenv("WRK_CONTENT_TYPE"), "set WRK_CONTENT_TYPE")

function done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "seconds": %.3f, "throughput_rps": %.1f, "non_2xx": %d, ' ..
      '"socket_errors": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
      summary.requests, seconds, summary.requests / seconds, errors.status,
      errors.connect + errors.read + errors.write + errors.timeout,
      latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
      latency.max / 1e3, latency.mean / 1e3))
end
