// forgejo-mcp-broker/testing: a real broker, a Forgejo stand-in and a headless sign-in for other
// projects' test suites (bun test), each instance with its own port, data and children.
export { startForgejoStandIn, type ForgejoStandIn, type ForgejoStandInOptions, type FakeForgejoUser as StandInUser, type FakeForgejoStats as StandInStats } from "./forgejo-stand-in.ts";
export { startBroker, STAND_IN_CHILD_SCRIPT, type BrokerSettings, type ForgejoApp, type StartBrokerOptions, type TestingBroker } from "./broker.ts";
export { signIn, type SignedIn, type SignInOptions } from "./sign-in.ts";
export type { RateLimitPolicy } from "../oauth/rate-limit.ts";
export { SignInError, type SignInStep } from "./oauth-client.ts";
