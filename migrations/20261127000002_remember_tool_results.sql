-- Tools whose results are remembered like messages (each a MemoryWriteWorkflow): a switch per
-- catalog entry, off by default. tenant_tools() returns it too.
ALTER TABLE tools ADD COLUMN remember_results BOOLEAN NOT NULL DEFAULT false;

DROP FUNCTION tenant_tools(TEXT);
CREATE FUNCTION tenant_tools(p_tenant_id TEXT)
RETURNS TABLE (name TEXT, description TEXT, input_schema JSONB, kind TEXT, endpoint TEXT, remote_name TEXT,
               enabled BOOLEAN, requires_approval BOOLEAN, timeout_ms INTEGER, max_attempts INTEGER,
               approval_timeout_ms INTEGER, max_concurrent INTEGER, remember_results BOOLEAN)
LANGUAGE sql STABLE AS $$
    SELECT t.name, t.description, t.input_schema, t.kind, t.endpoint, t.remote_name,
           coalesce(o.enabled, t.enabled), coalesce(o.requires_approval, t.requires_approval),
           t.timeout_ms, t.max_attempts, t.approval_timeout_ms, t.max_concurrent, t.remember_results
    FROM tools t LEFT JOIN tool_tenant_overrides o ON o.tool_name = t.name AND o.tenant_id = p_tenant_id
$$;
