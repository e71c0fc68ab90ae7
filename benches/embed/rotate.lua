-- wrk script: POST one JSON body per request, rotating through the lines of $BODIES (one body per
-- line). Each wrk thread starts at a different offset so the threads do not send the same sentence
-- at the same time.
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do
  if line ~= "" then bodies[#bodies + 1] = line end
end
local i = 0
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("start", counter * 97)
end

local headers = {}

function init(args)
  i = start or 0
  -- wrk.format replaces wrk.headers with the table it is given: keep the -H headers (credentials).
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Content-Type"] = "application/json"
end

function request()
  i = i + 1
  local body = bodies[(i % #bodies) + 1]
  return wrk.format("POST", nil, headers, body)
end
