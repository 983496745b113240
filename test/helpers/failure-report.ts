// What the tests check about a failed child: the client's message says what happened and a reference,
// and the broker log holds the child's last stderr line under that same reference.

/** The reference in `message` when it is exactly `what` plus the reference, else null. */
export function failureRef(message: string, what: string): string | null {
  const suffix = /^ \(the broker log has the details under ref ([0-9a-f]{12})\)$/.exec(message.startsWith(what) ? message.slice(what.length) : "");
  return suffix?.[1] ?? null;
}

/** The log lines (parsed) that carry `ref`. */
export function loggedUnder(lines: string[], ref: string): Record<string, unknown>[] {
  return lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((line) => line.ref === ref);
}
