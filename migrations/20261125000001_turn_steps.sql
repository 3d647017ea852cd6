-- One predicate for "a turn of the session accepted before this one is still open", used by
-- the step that begins a turn and by the wait behind earlier turns.
CREATE FUNCTION earlier_turn_open(p_tenant_id TEXT, p_turn_id UUID) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM open_turns earlier JOIN turns this ON this.id = p_turn_id AND this.tenant_id = p_tenant_id
        WHERE earlier.session_id = this.session_id AND earlier.tenant_id = p_tenant_id
          AND earlier.seq < this.seq)
$$;

-- Writes an audit row, once per dedupe key. The one place an audit row is inserted: the store
-- calls it alone, or inside the statement that accepts a turn (so acceptance and its audit
-- commit together in one round trip).
CREATE FUNCTION record_audit(
    p_tenant_id TEXT, p_request_id TEXT, p_trace_id TEXT, p_session_id UUID, p_turn_id UUID,
    p_actor TEXT, p_action TEXT, p_outcome TEXT, p_details JSONB, p_dedupe_key TEXT)
RETURNS VOID LANGUAGE sql AS $$
    INSERT INTO audit_log (tenant_id, request_id, trace_id, session_id, turn_id, actor, action, outcome,
                           details, dedupe_key)
    VALUES (p_tenant_id, p_request_id, p_trace_id, p_session_id, p_turn_id, p_actor, p_action, p_outcome,
            p_details, p_dedupe_key)
    ON CONFLICT (dedupe_key) DO NOTHING
$$;
