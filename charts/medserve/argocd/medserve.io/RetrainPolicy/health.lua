-- ArgoCD health of a medserve.io RetrainPolicy (Lua 5.1 subset, as ArgoCD's gopher-lua runs it).
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
if ready ~= nil and (ready.reason == "InvalidSpec" or ready.reason == "ModelDeploymentNotFound") then
  hs.status = "Degraded"
  hs.message = ready.message
  return hs
end
if status.activeJob ~= nil then
  hs.status = "Progressing"
  hs.message = "Retraining: Job " .. tostring(status.activeJob.name) .. " is running"
  return hs
end
if status.lastJob ~= nil and status.lastJob.result == "Failed" then
  hs.status = "Degraded"
  hs.message = "Retraining Job " .. tostring(status.lastJob.name) .. " failed: " .. tostring(status.lastJob.reason)
  return hs
end
local cooling = condition(status, "CoolingDown")
if cooling ~= nil and cooling.status == "True" then
  hs.status = "Suspended"
  hs.message = cooling.message
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = (ready.message ~= nil and ready.message ~= "") and ready.message or "Ready"
  return hs
end
hs.status = "Progressing"
hs.message = (ready ~= nil and ready.message) or "Waiting for the policy to be ready"
return hs
