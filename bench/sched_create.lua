-- wrk script: POST /v2/sandboxes as the SDK does (the key comes from $SG_BENCH_KEY).
wrk.method = "POST"
wrk.body = '{"templateID":"base","metadata":{"bench":"1"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = os.getenv("SG_BENCH_KEY")

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT creates_per_s=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f requests=%d errors_non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.requests, summary.errors.status))
end
