// The admin command line: every accepted form gives its one typed command, every wrong one a usage problem.
import { describe, expect, test } from "bun:test";
import { parseAdminArgs, type AdminCommand } from "../../src/admin/args.ts";

describe("parseAdminArgs", () => {
  const accepted: [string, string[], AdminCommand][] = [
    ["no command", [], { kind: "help" }],
    ["--help", ["--help"], { kind: "help" }],
    ["sessions", ["sessions"], { kind: "sessions", user: undefined, json: false }],
    ["sessions of a user, as JSON", ["sessions", "--user", "alice", "--json"], { kind: "sessions", user: "alice", json: true }],
    ["revoke a user", ["revoke", "--user", "alice"], { kind: "revoke", target: { user: "alice" }, json: false }],
    ["revoke a client", ["revoke", "--client", "c1", "--json"], { kind: "revoke", target: { client: "c1" }, json: true }],
    ["revoke a grant", ["revoke", "--grant", "g1"], { kind: "revoke", target: { grant: "g1" }, json: false }],
    ["clients", ["clients"], { kind: "clients", json: false }],
    ["delete a client", ["clients", "--delete", "https://app.example/client.json"], { kind: "delete-client", clientId: "https://app.example/client.json", json: false }],
    ["drain", ["drain"], { kind: "drain", json: false }],
    ["drain with a timeout", ["drain", "--timeout", "600"], { kind: "drain", timeoutS: 600, json: false }],
  ];
  test.each(accepted)("%s", (_, argv, command) => {
    expect(parseAdminArgs(argv)).toEqual({ ok: true, command });
  });

  const refused: [string, string[], string][] = [
    ["an unknown command", ["kill"], 'unknown command "kill"'],
    ["an option another command takes", ["sessions", "--client", "c1"], 'sessions takes no "--client"'],
    ["an option without its value", ["sessions", "--user"], "--user needs a value"],
    ["an option as a value", ["sessions", "--user", "--json"], "--user needs a value"],
    ["an option twice", ["sessions", "--user", "a", "--user", "b"], "--user given twice"],
    ["revoke with no target", ["revoke"], "revoke takes exactly one of --user, --client, --grant"],
    ["revoke with two targets", ["revoke", "--user", "a", "--client", "c"], "revoke takes exactly one of --user, --client, --grant"],
    ["a drain timeout that is no whole number", ["drain", "--timeout", "1.5"], "--timeout is a whole number of seconds, at least 1"],
    ["a drain timeout of zero", ["drain", "--timeout", "0"], "--timeout is a whole number of seconds, at least 1"],
  ];
  test.each(refused)("%s", (_, argv, problem) => {
    expect(parseAdminArgs(argv)).toEqual({ ok: false, problem });
  });
});
