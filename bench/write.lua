-- wrk script of the write workload: POST the Django admin's "add greeting" form, each
-- request with a new language code (the column is unique), as a logged-in superuser.
-- The admin answers 302 to the list when it saved the row: every other answer counts as
-- a failure (in the "non2xx" figure). Figures are reported as bench/report.lua does.
--
-- Arguments (after wrk's "--"): the Cookie header (sessionid and csrftoken), the form's
-- CSRF token, and a prefix of at most 6 characters unique to this wrk run.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local report_setup = setup
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  report_setup(thread)
end

function init(args)
  non2xx = 0
  sent = 0
  cookie, token, prefix = args[1], args[2], args[3]
  headers = {["Cookie"] = cookie, ["Content-Type"] = "application/x-www-form-urlencoded"}
end

function request()
  sent = sent + 1
  -- prefix (6) + thread (1+) + "-" + count in hex (up to 7): within the column's 16.
  local key = string.format("%s%d-%x", prefix, thread_id, sent)
  local body = "csrfmiddlewaretoken=" .. token .. "&language=" .. key .. "&text=Hello+" .. key .. "&_save=Save"
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status ~= 302 then
    non2xx = non2xx + 1
  end
end
