-- wrk script: each request picks a random line of the file given after `--`:
-- "<path>\t<header name>\t<header value>"
local lines = {}

init = function(args)
  for line in io.lines(args[1]) do
    local path, name, value = line:match("([^\t]+)\t([^\t]+)\t(.+)")
    lines[#lines + 1] = { path, name, value }
  end
  math.randomseed(os.time() + tonumber(tostring(lines):sub(-8), 16))
end

request = function()
  local r = lines[math.random(#lines)]
  return wrk.format("GET", r[1], { [r[2]] = r[3] })
end
