-- When a person's decision on a tool call was recorded. The api records a decision, then
-- signals the call's workflow; an api that dies between the two leaves a decision that no
-- workflow heard. The worker's recovery sweep finds those (decided a while ago, the call
-- still waiting) and delivers them.
ALTER TABLE tool_calls ADD COLUMN decided_at TIMESTAMPTZ;
CREATE INDEX tool_calls_undelivered_decisions ON tool_calls (decided_at)
    WHERE status = 'awaiting_approval' AND approval IS NOT NULL;
