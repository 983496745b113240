// The consent page in a real headless Chromium (Debian's package, driven by playwright-core): what
// the user sees, Allow and Deny landing on the client's loopback redirect URI, forged cross-site
// POSTs refused before Forgejo is ever asked, and the page refusing to be framed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chromium, type Browser, type BrowserContext, type Page, type Response as PwResponse } from "playwright-core";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { postForm } from "../../src/testing/oauth-client.ts";
import { directConnect } from "../../src/oauth/metadata-fetch.ts";
import { startClientMetadataServer, type ClientMetadataServer } from "../fixtures/client-metadata-server.ts";

const CHROMIUM = "/usr/bin/chromium";
// The machine has no outside network: without these Chromium keeps dialling Google's services.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // A second *site* for the forgeries: attacker.test is the loopback attacker server under another name.
  "--host-resolver-rules=MAP attacker.test 127.0.0.1",
];
const WAIT = 15_000;
/** Per test: a few browser navigations, each allowed WAIT. */
const TEST_TIMEOUT = 60_000;

let t: TestBroker;
let browser: Browser;
/** The MCP client's loopback redirect listener: every request that reached it, in order. */
let clientServer: ReturnType<typeof Bun.serve>;
const arrivals: URL[] = [];
/** Serves the forging and framing pages; reached as attacker.test (cross-site) or 127.0.0.1 (same site, other origin). */
let attackerServer: ReturnType<typeof Bun.serve>;
let redirectUri: string;
/** Where the client known by its metadata document publishes it (https, a certificate only the broker trusts). */
let metadataDocs: ClientMetadataServer;
let authorizeEndpoint: string;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get update && apt-get install -y chromium (as .ci/run does)`);
  metadataDocs = startClientMetadataServer();
  t = await startTestBroker({
    env: { BROKER_CIMD_INSECURE_HOSTS: metadataDocs.hostPort },
    broker: { metadataFetch: { connect: directConnect(metadataDocs.certificate.cert) } },
  });
  authorizeEndpoint = `${t.config.publicUrl}/oauth/authorize`;

  clientServer = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      const url = new URL(request.url);
      if (url.pathname === "/favicon.ico") return new Response(null, { status: 404 });
      arrivals.push(url);
      return new Response("<!doctype html><title>client</title><h1>Back in the client</h1>", { headers: { "content-type": "text/html" } });
    },
  });
  redirectUri = `http://127.0.0.1:${clientServer.port}/callback`;

  attackerServer = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      const url = new URL(request.url);
      const html = (body: string) => new Response(`<!doctype html><html><body>${body}</body></html>`, { headers: { "content-type": "text/html" } });
      if (url.pathname === "/forge") {
        // An auto-submitting form, as a malicious site would plant; omitted fields are left out entirely.
        const fields = ["authorization_id", "csrf_token", "decision"]
          .filter((name) => url.searchParams.has(name))
          .map((name) => `<input type="hidden" name="${name}" value="${Bun.escapeHTML(url.searchParams.get(name)!)}">`)
          .join("");
        return html(`<form id="f" method="post" action="${Bun.escapeHTML(authorizeEndpoint)}">${fields}</form><script>document.getElementById("f").submit()</script>`);
      }
      if (url.pathname === "/frame") {
        return html(`<h1>Innocent page</h1><iframe id="victim" width="600" height="400" src="${Bun.escapeHTML(url.searchParams.get("src")!)}"></iframe>`);
      }
      return new Response("not found", { status: 404 });
    },
  });

  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
}, 90_000);

afterAll(async () => {
  await browser?.close();
  await clientServer?.stop(true);
  await attackerServer?.stop(true);
  await t?.stop();
  await metadataDocs?.stop();
});

interface Flow {
  clientId: string;
  verifier: string;
  state: string;
  url: string;
}

/** Registers a public client for the loopback listener and builds an S256 PKCE authorization URL. */
async function startFlow(clientName = "Notes Assistant"): Promise<Flow> {
  const registration = await fetch(`${t.config.publicUrl}/oauth/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ client_name: clientName, redirect_uris: [redirectUri], token_endpoint_auth_method: "none" }),
  });
  expect(registration.status).toBe(201);
  const { client_id: clientId } = (await registration.json()) as { client_id: string };
  const verifier = randomBytes(32).toString("base64url");
  const challenge = new Bun.CryptoHasher("sha256").update(verifier).digest("base64url");
  // A state with characters that must survive encoding both ways.
  const state = `st ${randomBytes(6).toString("hex")}&x=/?`;
  const url = new URL(authorizeEndpoint);
  url.search = new URLSearchParams({
    client_id: clientId,
    redirect_uri: redirectUri,
    response_type: "code",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state,
    resource: t.mcpUrl,
  }).toString();
  return { clientId, verifier, state, url: url.href };
}

/** A client known by its metadata document, which this test publishes: an S256 PKCE authorization URL with its URL as client_id. */
function startDocumentFlow(clientName: string): Flow {
  const clientId = `${metadataDocs.origin}/clients/${randomBytes(4).toString("hex")}.json`;
  metadataDocs.serve(new URL(clientId).pathname, () =>
    Response.json({ client_id: clientId, client_name: clientName, redirect_uris: [redirectUri], token_endpoint_auth_method: "none" }),
  );
  const verifier = randomBytes(32).toString("base64url");
  const state = `st ${randomBytes(6).toString("hex")}`;
  const url = new URL(authorizeEndpoint);
  url.search = new URLSearchParams({
    client_id: clientId,
    redirect_uri: redirectUri,
    response_type: "code",
    code_challenge: new Bun.CryptoHasher("sha256").update(verifier).digest("base64url"),
    code_challenge_method: "S256",
    state,
  }).toString();
  return { clientId, verifier, state, url: url.href };
}

/** Runs `body` in a fresh browser context (its own cookie jar), always closed afterwards. */
async function inBrowser<T>(body: (page: Page, context: BrowserContext) => Promise<T>): Promise<T> {
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT);
  context.setDefaultNavigationTimeout(WAIT);
  try {
    return await body(await context.newPage(), context);
  } finally {
    await context.close();
  }
}

async function openConsent(page: Page, flow: Flow): Promise<PwResponse> {
  const response = await page.goto(flow.url, { waitUntil: "load" });
  expect(response).not.toBeNull();
  expect(response!.status()).toBe(200);
  await page.getByRole("button", { name: "Allow" }).waitFor({ state: "visible" });
  return response!;
}

const landedAtClient = (page: Page) => page.waitForURL((url) => url.href.startsWith(redirectUri), { timeout: WAIT });

/** Clicks Allow or Deny and waits for the client's redirect URI, failing at once with the broker's page if it refuses. */
async function decide(page: Page, button: "Allow" | "Deny"): Promise<URL> {
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url() === authorizeEndpoint && r.request().method() === "POST"),
    page.getByRole("button", { name: button }).click(),
  ]);
  if (answer.status() < 300 || answer.status() >= 400) {
    await page.waitForLoadState("load");
    throw new Error(`${button} was answered ${answer.status()}: ${await page.locator("body").innerText()}`);
  }
  await landedAtClient(page);
  return new URL(page.url());
}

/** Submits the attacker's auto-posting form and returns the broker's answer to it (the page ends on it). */
async function forge(page: Page, attackerOrigin: string, fields: Record<string, string>): Promise<PwResponse> {
  const forged = new URL(`${attackerOrigin}/forge`);
  for (const [name, value] of Object.entries(fields)) forged.searchParams.set(name, value);
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url() === authorizeEndpoint && r.request().method() === "POST", { timeout: WAIT }),
    page.goto(forged.href, { waitUntil: "commit" }),
  ]);
  await page.waitForURL(authorizeEndpoint, { waitUntil: "load" });
  return answer;
}

describe("the consent page in a real browser", () => {
  test("shows who is asking and where it goes back to, with Allow and Deny, and forbids framing in its CSP", async () => {
    const flow = await startFlow();
    await inBrowser(async (page) => {
      const problems: string[] = [];
      page.on("console", (message) => {
        if (message.type() === "error" || message.type() === "warning") problems.push(message.text());
      });
      page.on("pageerror", (error) => problems.push(error.message));

      const response = await openConsent(page, flow);
      const headers = await response.allHeaders();
      expect(headers["content-security-policy"]).toContain("frame-ancestors 'none'");
      expect(headers["x-frame-options"]).toBe("DENY");
      expect(headers["cache-control"]).toBe("no-store");

      expect(await page.title()).toBe("Allow Notes Assistant?");
      await expect(page.getByRole("heading", { level: 1 }).innerText()).resolves.toBe("Allow “Notes Assistant” to use Forgejo as you?");
      const body = await page.locator("body").innerText();
      expect(body).toContain(`Notes Assistant will be sent back to 127.0.0.1:${clientServer.port} (an application on this computer).`);
      expect(body).toContain(new URL(t.forgejo.url).host);
      expect(body).toContain(`Client id: ${flow.clientId}`);
      expect(await page.getByRole("button", { name: "Allow" }).isVisible()).toBe(true);
      expect(await page.getByRole("button", { name: "Deny" }).isVisible()).toBe(true);
      // The browser-binding cookie is out of reach of scripts.
      const cookies = await page.context().cookies(t.config.publicUrl);
      expect(cookies.find((c) => c.name === "fmb_browser")).toMatchObject({ httpOnly: true, sameSite: "Lax" });

      await page.screenshot({ path: "/tmp/consent.png", fullPage: true });
      // The page's own CSP must not block anything the page uses (its inline style).
      expect(problems).toEqual([]);
    });
    expect(arrivals.filter((a) => a.searchParams.get("state") === flow.state)).toEqual([]);
  }, TEST_TIMEOUT);

  test("for a client known by its metadata document: the name marked self-asserted, the document's host, where it returns; Allow gets a code", async () => {
    const flow = startDocumentFlow("Doc Assistant");
    await inBrowser(async (page) => {
      await openConsent(page, flow);
      expect(await page.title()).toBe("Allow Doc Assistant?");
      const body = await page.locator("body").innerText();
      expect(body).toContain(`The name “Doc Assistant” is self-asserted: the application describes itself in a document published on ${metadataDocs.hostPort}.`);
      expect(body).toContain(`Doc Assistant will be sent back to 127.0.0.1:${clientServer.port} (an application on this computer).`);
      expect(body).toContain(`Client id: ${flow.clientId}`);
      await page.screenshot({ path: "/tmp/consent-cimd.png", fullPage: true });
      const landing = await decide(page, "Allow");
      expect(landing.searchParams.get("code")).toStartWith("fmb_code_");
      expect(landing.searchParams.get("state")).toBe(flow.state);
      expect(landing.searchParams.get("iss")).toBe(t.config.publicUrl);
      const tokens = await postForm(`${t.config.publicUrl}/oauth/token`, {
        grant_type: "authorization_code",
        code: landing.searchParams.get("code")!,
        code_verifier: flow.verifier,
        redirect_uri: redirectUri,
        client_id: flow.clientId,
      });
      expect(tokens.status).toBe(200);
      expect(((await tokens.json()) as { scope: string }).scope).toBe("mcp");
    });
  }, TEST_TIMEOUT);

  test("Allow goes through Forgejo and lands on the redirect URI with a code, the state and iss; the code buys tokens", async () => {
    const flow = await startFlow();
    const forgejoAuthorizeBefore = t.forgejo.stats.authorizeRequests;
    const landing = await inBrowser(async (page) => {
      await openConsent(page, flow);
      const landed = await decide(page, "Allow");
      await expect(page.getByRole("heading", { level: 1 }).innerText()).resolves.toBe("Back in the client");
      return landed;
    });
    expect(t.forgejo.stats.authorizeRequests).toBe(forgejoAuthorizeBefore + 1);
    expect(landing.origin + landing.pathname).toBe(redirectUri);
    const code = landing.searchParams.get("code");
    expect(code).toStartWith("fmb_code_");
    expect(landing.searchParams.get("state")).toBe(flow.state);
    expect(landing.searchParams.get("iss")).toBe(t.config.publicUrl);
    expect(landing.searchParams.get("error")).toBeNull();
    // The listener really received it (the browser was not merely pointed at it).
    expect(arrivals.some((a) => a.searchParams.get("code") === code)).toBe(true);

    const exchange = () =>
      postForm(`${t.config.publicUrl}/oauth/token`, {
        grant_type: "authorization_code",
        code: code!,
        code_verifier: flow.verifier,
        redirect_uri: redirectUri,
        client_id: flow.clientId,
      });
    const tokenResponse = await exchange();
    expect(tokenResponse.status).toBe(200);
    const tokens = (await tokenResponse.json()) as Record<string, unknown>;
    expect(tokens.access_token).toStartWith("fmb_at_");
    expect(tokens.refresh_token).toStartWith("fmb_rt_");
    expect(tokens.token_type).toBe("Bearer");
    // Codes are single use.
    const again = await exchange();
    expect(again.status).toBe(400);
    expect(((await again.json()) as { error: string }).error).toBe("invalid_grant");
  }, TEST_TIMEOUT);

  test("Deny lands on the redirect URI with access_denied, the state and iss, without asking Forgejo", async () => {
    // A name full of markup is shown as text, not interpreted.
    const flow = await startFlow(`<img src=x onerror=alert(1)> "Evil" & Co`);
    const forgejoAuthorizeBefore = t.forgejo.stats.authorizeRequests;
    const landing = await inBrowser(async (page) => {
      await openConsent(page, flow);
      await expect(page.getByRole("heading", { level: 1 }).innerText()).resolves.toBe(`Allow “<img src=x onerror=alert(1)> "Evil" & Co” to use Forgejo as you?`);
      expect(await page.locator("img").count()).toBe(0);
      return decide(page, "Deny");
    });
    expect(t.forgejo.stats.authorizeRequests).toBe(forgejoAuthorizeBefore);
    expect(landing.origin + landing.pathname).toBe(redirectUri);
    expect(landing.searchParams.get("error")).toBe("access_denied");
    expect(landing.searchParams.get("state")).toBe(flow.state);
    expect(landing.searchParams.get("iss")).toBe(t.config.publicUrl);
    expect(landing.searchParams.get("code")).toBeNull();
    expect(arrivals.some((a) => a.searchParams.get("state") === flow.state && a.searchParams.get("error") === "access_denied")).toBe(true);
  }, TEST_TIMEOUT);

  test("forged POSTs from other origins are refused, Forgejo is never asked, and the real Allow still works after", async () => {
    const flow = await startFlow();
    const crossSite = `http://attacker.test:${attackerServer.port}`;
    // Same site as the broker (the same host, other port) but another origin: the SameSite=Lax
    // cookie rides along, so only the Origin check can stop it.
    const sameSiteOtherOrigin = `http://127.0.0.1:${attackerServer.port}`;
    const forgejoAuthorizeBefore = t.forgejo.stats.authorizeRequests;
    const arrivalsBefore = arrivals.length;

    await inBrowser(async (page, context) => {
      // The victim's browser has a live consent in progress; the attacker knows its authorization_id.
      await openConsent(page, flow);
      const authorizationId = await page.locator('input[name="authorization_id"]').inputValue();
      const csrfToken = await page.locator('input[name="csrf_token"]').inputValue();
      expect(authorizationId.length).toBeGreaterThan(10);
      expect(csrfToken).toStartWith("fmb_csrf_");

      const attacker = await context.newPage();
      const refusedAs = async (origin: string, fields: Record<string, string>) => {
        const answer = await forge(attacker, origin, fields);
        return {
          status: answer.status(),
          heading: await attacker.getByRole("heading", { level: 1 }).innerText(),
          text: await attacker.locator("body").innerText(),
          secFetchSite: (await answer.request().allHeaders())["sec-fetch-site"],
        };
      };

      const wrongToken = await refusedAs(crossSite, { authorization_id: authorizationId, csrf_token: "fmb_csrf_forged", decision: "allow" });
      expect(wrongToken).toMatchObject({ status: 403, heading: "Request refused", secFetchSite: "cross-site" });

      const missingToken = await refusedAs(crossSite, { authorization_id: authorizationId, decision: "allow" });
      expect(missingToken.status).toBe(400);
      expect(missingToken.heading).toBe("Invalid request");

      const rightTokenCrossSite = await refusedAs(crossSite, { authorization_id: authorizationId, csrf_token: csrfToken, decision: "allow" });
      expect(rightTokenCrossSite).toMatchObject({ status: 403, heading: "Request refused", secFetchSite: "cross-site" });
      expect(rightTokenCrossSite.text).toContain("submitted from another site");

      const rightTokenOtherOrigin = await refusedAs(sameSiteOtherOrigin, { authorization_id: authorizationId, csrf_token: csrfToken, decision: "allow" });
      expect(rightTokenOtherOrigin).toMatchObject({ status: 403, heading: "Request refused", secFetchSite: "same-site" });
      expect(rightTokenOtherOrigin.text).toContain("submitted from another site");

      // From the broker's own page, a tampered token is caught by the token check itself.
      const tampered = await context.newPage();
      await openConsent(tampered, await startFlow());
      await tampered.locator('input[name="csrf_token"]').evaluate((input: HTMLInputElement) => {
        input.value = "fmb_csrf_tampered";
      });
      const [tamperedAnswer] = await Promise.all([
        tampered.waitForResponse((r) => r.url() === authorizeEndpoint && r.request().method() === "POST"),
        tampered.getByRole("button", { name: "Allow" }).click(),
      ]);
      await tampered.waitForLoadState("load");
      expect(tamperedAnswer.status()).toBe(403);
      expect(await tampered.locator("body").innerText()).toContain("security token does not match");
      expect(t.logs.some((line) => line.includes("consent refused: CSRF check failed"))).toBe(true);

      // None of it reached Forgejo or the client, and the victim's own consent is untouched.
      expect(t.forgejo.stats.authorizeRequests).toBe(forgejoAuthorizeBefore);
      expect(arrivals.length).toBe(arrivalsBefore);
      const landing = await decide(page, "Allow");
      expect(landing.searchParams.get("code")).toStartWith("fmb_code_");
      expect(landing.searchParams.get("state")).toBe(flow.state);
      expect(t.forgejo.stats.authorizeRequests).toBe(forgejoAuthorizeBefore + 1);
    });
  }, TEST_TIMEOUT);

  test("cannot be framed by another site: the frame stays empty", async () => {
    const flow = await startFlow();
    await inBrowser(async (page) => {
      const refusals: string[] = [];
      page.on("console", (message) => {
        if (message.text().includes("frame-ancestors")) refusals.push(message.text());
      });
      const framed = new URL(`http://attacker.test:${attackerServer.port}/frame`);
      framed.searchParams.set("src", flow.url);
      // The broker does answer the frame's request (with its CSP); the browser must refuse to show it.
      const [frameResponse] = await Promise.all([
        page.waitForResponse((r) => r.url() === flow.url),
        page.goto(framed.href, { waitUntil: "load" }),
      ]);
      expect(frameResponse.status()).toBe(200);
      expect((await frameResponse.allHeaders())["content-security-policy"]).toContain("frame-ancestors 'none'");
      await page.getByRole("heading", { name: "Innocent page" }).waitFor();

      const deadline = Date.now() + WAIT;
      while (refusals.length === 0 && Date.now() < deadline) await Bun.sleep(50);
      expect(refusals.join("\n")).toContain("frame-ancestors 'none'");

      const frame = await (await page.locator("#victim").elementHandle())!.contentFrame();
      expect(frame).not.toBeNull();
      expect(frame!.url()).not.toStartWith(t.config.publicUrl);
      expect(await frame!.locator("form").count()).toBe(0);
      expect(await frame!.locator("button").count()).toBe(0);
      expect(await frame!.locator("body").innerText().catch(() => "")).not.toContain("Allow");
    });
  }, TEST_TIMEOUT);
});
