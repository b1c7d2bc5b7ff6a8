-- ArgoCD health of a medserve.io ModelDeployment (Lua 5.1 subset, as ArgoCD's gopher-lua runs it).
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
if status.phase == "Failed" or status.phase == "Degraded" then
  local degraded = condition(status, "Degraded")
  hs.status = "Degraded"
  if degraded ~= nil and degraded.status == "True" then
    hs.message = degraded.message
  elseif ready ~= nil then
    hs.message = ready.message
  else
    hs.message = status.phase
  end
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local model = status.model or {}
  hs.message = "Serving " .. tostring(model.name) .. " version " .. tostring(model.version)
  local drift = condition(status, "DriftDetected")
  if drift ~= nil and drift.status == "True" then
    hs.message = hs.message .. "; drift detected: " .. tostring(drift.message)
  end
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "Phase " .. tostring(status.phase)
end
return hs
