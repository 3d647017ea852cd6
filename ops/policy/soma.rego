# The platform's policy gates, as OPA evaluates them: the input is
#   {tenant, persona_id, action, resource, context}
# and the decision is data.soma.allow (undefined counts as a denial: fail closed).
# Actions: conversation.send (a chat turn's first step), tool.execute (every tool call),
# memory.write (every memory write; resource: the role of the remembered message).
package soma

import rego.v1

default allow := false

# Every tenant may chat.
allow if input.action == "conversation.send"

# Memory: every tenant's messages are remembered, except tenants listed in no_memory_tenants.
allow if {
	input.action == "memory.write"
	not input.tenant in no_memory_tenants
}

# Tenants whose conversations are never written to memory.
no_memory_tenants := {"tenant-without-memory"}

# Tools: any enabled tool, except those a deployment lists in blocked_tools.
allow if {
	input.action == "tool.execute"
	not input.resource in blocked_tools
}

# Tools nobody may run here, whatever the catalog says.
blocked_tools := {"forbidden_tool"}

# Why a request was denied, for the stream and the audit row.
reason := sprintf("tool %s is blocked by policy", [input.resource]) if {
	input.action == "tool.execute"
	input.resource in blocked_tools
}

reason := sprintf("tenant %s does not keep memories", [input.tenant]) if {
	input.action == "memory.write"
	input.tenant in no_memory_tenants
}
