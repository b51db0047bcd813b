-- Argo CD health of a lotabots GpuAttestation or ModelAttestation, with the meaning the
-- operator gives its conditions (and that Flux's kstatus reads the same way):
--   Stalled=True      -> Degraded     (a node or a stage failed, or agents went silent)
--   Reconciling=True  -> Progressing  (evidence or stages pending)
--   Ready=True        -> Healthy      (all attested / all stages passed / nothing selected)
-- A status older than the spec (observedGeneration behind) is Progressing.
local hs = { status = "Progressing", message = "waiting for the lotabots operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  found[c.type] = c
end
local function holds(t)
  return found[t] ~= nil and found[t].status == "True"
end
local function say(t)
  local c = found[t]
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end
if holds("Stalled") then
  hs.status = "Degraded"
  hs.message = say("Stalled")
elseif holds("Reconciling") then
  hs.status = "Progressing"
  hs.message = say("Reconciling")
elseif holds("Ready") then
  hs.status = "Healthy"
  hs.message = say("Ready")
elseif found["Ready"] ~= nil then
  hs.message = say("Ready")
end
return hs
