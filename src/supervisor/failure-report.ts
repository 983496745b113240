// What a client is told when its MCP server fails: what happened and a reference, never the child's own
// words (its stderr may name hosts, paths or accounts); those go to the broker log under the same reference.
import { randomHex } from "../crypto.ts";
import type { Logger } from "../log.ts";

const REFERENCE = / \(the broker log has the details under ref [0-9a-f]{12}\)$/;

/** Logs `what` with the child's last stderr line under a fresh reference; returns the client's message, which names only the reference. */
export function reportChildFailure(logger: Logger, what: string, lastStderrLine: string | null): string {
  const ref = randomHex(6);
  logger.warn(what, { ref, last_stderr_line: lastStderrLine });
  return `${what} (the broker log has the details under ref ${ref})`;
}

/** Whether `message` is one reportChildFailure returned: the failure is in the log already, under the reference it names. */
export function isReported(message: string): boolean {
  return REFERENCE.test(message);
}
