-- ArgoCD health of a medserve.io ABTest (Lua 5.1 subset, as ArgoCD's gopher-lua runs it). A running test
-- is Healthy: it may run for days, and Progressing would hold every sync wave after it back.
local function condition(status, type_)
  if status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the medserve operator"
  return hs
end
if status.observedGeneration == nil or status.observedGeneration < (obj.metadata.generation or 0) then
  hs.status = "Progressing"
  hs.message = "Waiting for the medserve operator to act on the latest spec"
  return hs
end
local ready = condition(status, "Ready")
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (ready ~= nil and ready.message) or "The ABTest failed"
  return hs
end
if status.phase == "Stopped" then
  hs.status = "Suspended"
  hs.message = (ready ~= nil and ready.message) or "The ABTest was stopped"
  return hs
end
if status.phase == "Concluded" then
  hs.status = "Healthy"
  hs.message = "Concluded: " .. tostring(status.decision)
  return hs
end
if status.phase == "Running" then
  local samples = status.samples or {}
  hs.status = "Healthy"
  hs.message = "Running: " .. tostring(samples.control or 0) .. " control and " ..
    tostring(samples.treatment or 0) .. " treatment samples"
  return hs
end
local arms = condition(status, "ArmsReady")
hs.status = "Progressing"
if arms ~= nil and arms.status ~= "True" then
  hs.message = arms.message
else
  hs.message = "Waiting for the split to start"
end
return hs
