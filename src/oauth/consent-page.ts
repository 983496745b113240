// The HTML the browser sees: the broker's own consent page (shown per client, because Forgejo
// skips its consent for our app once granted) and the error pages, never an automatic redirect.

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => ESCAPES[ch]!);
}

const ACCESS: Record<string, string> = {
  "read:user": "see your Forgejo profile",
  "write:user": "see and change your Forgejo profile settings",
  "read:repository": "read your repositories",
  "write:repository": "read and change your repositories, branches, files and pull requests",
  "read:issue": "read issues and comments",
  "write:issue": "read, open, edit and comment on issues",
  "read:organization": "see your organizations and teams",
  "write:organization": "manage your organizations and teams",
  "read:notification": "read your notifications",
  "write:notification": "mark your notifications read",
  "read:package": "read packages",
  "write:package": "publish and delete packages",
  "read:misc": "read miscellaneous data",
  "write:misc": "change miscellaneous data",
  "read:activitypub": "read federation data",
  "write:activitypub": "act in federation as you",
  "read:admin": "read site administration data",
  "write:admin": "administer the site",
};

/** What the Forgejo scopes let a client do, in words a user can judge. */
export function describeForgejoScopes(scopes: string[]): string[] {
  if (scopes.length === 0 || scopes.includes("all")) return ["everything your Forgejo account can do"];
  return scopes.map((scope) => ACCESS[scope] ?? `use the Forgejo permission “${scope}”`);
}

const STYLE = `body{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}ul{padding-left:1.2rem}.who{background:#f4f4f4;border-radius:6px;padding:.8rem 1rem}
.warn{color:#8a4b00}.actions{display:flex;gap:1rem;margin-top:1.5rem}button{font:inherit;padding:.5rem 1.4rem;border-radius:6px;border:1px solid #888;cursor:pointer}
button.allow{background:#1f6f3f;color:#fff;border-color:#1f6f3f}`;

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="referrer" content="same-origin"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head><body>${body}</body></html>`;
}

export interface ConsentView {
  clientName: string;
  clientId: string;
  /** For a client known by its metadata document: the host that serves the document, which vouches for nothing but itself. */
  metadataHost?: string;
  redirectTarget: { host: string; note?: string };
  forgejoHost: string;
  access: string[];
  authorizationId: string;
  csrfToken: string;
  formAction: string;
}

export function renderConsentPage(view: ConsentView): string {
  const e = escapeHtml;
  return page(
    `Allow ${view.clientName}?`,
    `<h1>Allow “${e(view.clientName)}” to use Forgejo as you?</h1>
<div class="who">${view.metadataHost ? `<p class="origin">The name “${e(view.clientName)}” is self-asserted: the application describes itself in a document published on <strong>${e(view.metadataHost)}</strong>.</p>\n` : ""}<p><strong>${e(view.clientName)}</strong> will be sent back to <strong>${e(view.redirectTarget.host)}</strong>${view.redirectTarget.note ? ` ${e(view.redirectTarget.note)}` : ""}.</p>
<p>It wants to use the Forgejo MCP tools on <strong>${e(view.forgejoHost)}</strong> with your account. It will be able to:</p>
<ul>${view.access.map((item) => `<li>${e(item)}</li>`).join("")}</ul>
<p>It can never do more than your own Forgejo account may.</p></div>
<p class="warn">The name above is what the application calls itself. Allow only if you just started this from an application you trust.</p>
<form method="post" action="${e(view.formAction)}">
<input type="hidden" name="authorization_id" value="${e(view.authorizationId)}">
<input type="hidden" name="csrf_token" value="${e(view.csrfToken)}">
<div class="actions"><button class="allow" type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button></div>
</form>
<p><small>Client id: ${e(view.clientId)}</small></p>`,
  );
}

/** An error page; with a link where the user may choose to carry the error back to the client. */
export function renderErrorPage(title: string, message: string, link?: { href: string; label: string }): string {
  const action = link ? `<p><a href="${escapeHtml(link.href)}">${escapeHtml(link.label)}</a></p>` : "";
  return page(title, `<h1>${escapeHtml(title)}</h1><p>${escapeHtml(message)}</p>${action}`);
}

/** Headers for every page: never framed, never cached, no third-party anything. */
export function pageHeaders(formTargets: string[] = []): Record<string, string> {
  return {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": `default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'; form-action 'self' ${formTargets.join(" ")}`.trim(),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
  };
}
