// The broker's answer to server/discover: the versions the broker speaks (not the child's), and the
// child's capabilities, instructions and serverInfo, from its InitializeResult or its own DiscoverResult.
import { completeResult } from "./results.ts";
import { ALL_PROTOCOL_VERSIONS, META } from "./versions.ts";

export function discoverResult(initializeResult: Record<string, unknown>): Record<string, unknown> {
  const { capabilities, instructions, serverInfo } = initializeResult;
  return completeResult("server/discover", {
    supportedVersions: ALL_PROTOCOL_VERSIONS,
    capabilities: capabilities ?? {},
    ...(typeof instructions === "string" ? { instructions } : {}),
    ...(serverInfo === undefined ? {} : { _meta: { [META.serverInfo]: serverInfo } }),
  });
}
