-- wrk script for bench/run.sh: the same request mix for every case, four
-- order reads to one order creation, with the Authorization (and, for the
-- direct case, the Host) taken from the environment. done() prints one
-- machine-readable line that run.sh parses.
--
--   BENCH_AUTH="Basic ..." [BENCH_HOST=api.kustom.co] wrk -s bench/wrk.lua ...

local auth = os.getenv("BENCH_AUTH") or ""
local host = os.getenv("BENCH_HOST") or ""
local reqs = {}
local i = 0

local order_body = '{"purchase_country":"SE","purchase_currency":"SEK","locale":"sv-SE",' ..
  '"order_amount":10000,"order_tax_amount":2000,"order_lines":[{"type":"physical",' ..
  '"reference":"19-402","name":"Battery Power Pack","quantity":1,"unit_price":10000,' ..
  '"tax_rate":2500,"total_amount":10000,"total_tax_amount":2000}],"merchant_urls":{' ..
  '"terms":"https://www.example.com/terms.html","checkout":"https://www.example.com/checkout.html",' ..
  '"confirmation":"https://www.example.com/confirmation.html","push":"https://www.example.com/api/push"}}'

function init(args)
  local h = { ["Authorization"] = auth, ["User-Agent"] = "Klarna/kco_rest_php (bench)", ["Accept"] = "application/json" }
  if host ~= "" then h["Host"] = host end
  local get = wrk.format("GET", "/checkout/v3/orders/0003a1b2-c3d4-e5f6-a7b8-c9d0e1f2a3b4", h)
  local ph = {}
  for k, v in pairs(h) do ph[k] = v end
  ph["Content-Type"] = "application/json"
  local post = wrk.format("POST", "/checkout/v3/orders", ph, order_body)
  reqs = { get, get, get, get, post }
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d mean_us=%.0f " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
