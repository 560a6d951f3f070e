-- mcp_node.lua -- for mcp.bench.sh: install the official MCP SDK like the
-- interop specs do (tests/fixtures/node.lua, a cache folder outside the
-- repo) and print `node <script>` for the named tests/node script, or
-- nothing when Node or npm is missing.
package.path = "tests/fixtures/?.lua;" .. package.path
local node = require "node"
if not node.setup() then return end
print(table.concat(node.argv(arg[1] or "mcp_bench.mjs"), " "))
