// deploy/Containerfile and the Quadlet, read as a container engine and systemd's Quadlet generator read them (no
// engine builds images on this machine): stages that refer to each other and to files the checkout has, a
// non-root user owning /data, a pinned and checksummed forgejo-mcp, and a Quadlet unit that matches the image.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");
const read = (path: string) => readFileSync(join(ROOT, path), "utf8");

interface Instruction {
  keyword: string;
  args: string;
}
interface Stage {
  image: string;
  name: string | null;
  instructions: Instruction[];
}

/** A Containerfile's stages: comments dropped, continuation lines joined, each FROM starting a stage. */
function stagesOf(text: string): { globalArgs: Map<string, string>; stages: Stage[] } {
  const logical = text
    .split("\n")
    .filter((line) => !line.trimStart().startsWith("#"))
    .join("\n")
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of logical) {
    const [, keyword, args] = /^(\S+)\s+(.*)$/.exec(line)!;
    const upper = keyword!.toUpperCase();
    if (upper === "FROM") {
      const [, image, name] = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args!)!;
      stages.push({ image: image!, name: name ?? null, instructions: [] });
    } else if (stages.length === 0) {
      expect(upper).toBe("ARG");
      const [name, value] = args!.split("=");
      globalArgs.set(name!, value!);
    } else {
      stages.at(-1)!.instructions.push({ keyword: upper, args: args! });
    }
  }
  return { globalArgs, stages };
}

const { globalArgs, stages } = stagesOf(read("deploy/Containerfile"));
const final = stages.at(-1)!;
const argsOf = (stage: Stage) => new Map(stage.instructions.filter((i) => i.keyword === "ARG").map((i) => i.args.split("=") as [string, string]));
const all = (stage: Stage, keyword: string) => stage.instructions.filter((i) => i.keyword === keyword).map((i) => i.args);

describe("deploy/Containerfile", () => {
  test("multi-stage: named build stages, each base image an ARG with a pinned tag", () => {
    expect(stages.map((stage) => stage.name)).toEqual(["broker", "forgejo-mcp", null]);
    for (const stage of stages) {
      const arg = /^\$\{(\w+)\}$/.exec(stage.image)?.[1];
      expect(globalArgs.get(arg!)).toMatch(/^docker\.io\/library\/[a-z]+:[\w.-]+$/);
      expect(globalArgs.get(arg!)).not.toEndWith(":latest");
    }
  });

  test("every COPY --from names an earlier stage, and every other COPY a file or directory of the checkout", () => {
    stages.forEach((stage, index) => {
      for (const args of all(stage, "COPY")) {
        const parts = args.split(/\s+/);
        const from = parts.find((part) => part.startsWith("--from="))?.slice("--from=".length);
        if (from !== undefined) {
          expect(stages.slice(0, index).map((s) => s.name)).toContain(from);
          continue;
        }
        for (const source of parts.slice(0, -1)) expect(existsSync(join(ROOT, source))).toBe(true);
      }
    });
  });

  test("the broker stage installs the Bun binary the lockfile's bun package has", () => {
    const run = all(stages[0]!, "RUN").join(" ");
    const installed = /install -m 0755 (\S+) \/usr\/local\/bin\/bun/.exec(run)![1]!;
    expect(existsSync(join(ROOT, installed))).toBe(true);
    // Bun is taken before the dev dependencies (it is one) are pruned.
    expect(run.indexOf("install -m 0755")).toBeLessThan(run.indexOf("npm prune --omit=dev"));
  });

  test("forgejo-mcp: a pinned release from its Codeberg releases, checked against a pinned sha256 before use", () => {
    const args = argsOf(stages[1]!);
    expect(args.get("FORGEJO_MCP_VERSION")).toMatch(/^\d+\.\d+\.\d+$/);
    expect(args.get("FORGEJO_MCP_SHA256")).toMatch(/^[0-9a-f]{64}$/);
    const run = all(stages[1]!, "RUN").join(" ");
    // Codeberg's releases by default; a mirror of their layout only by build argument, checked the same way.
    expect(args.get("FORGEJO_MCP_RELEASES")).toBe("https://codeberg.org/goern/forgejo-mcp/releases/download");
    expect(run).toContain("${FORGEJO_MCP_RELEASES}/v${FORGEJO_MCP_VERSION}/${archive}.tar.gz");
    expect(run.indexOf("sha256sum -c")).toBeLessThan(run.indexOf("tar -xzf"));
    expect(all(final, "COPY")).toContain("--from=forgejo-mcp /usr/local/bin/forgejo-mcp /usr/local/bin/forgejo-mcp");
    expect(all(final, "ENV").join(" ")).toContain('BROKER_CHILD_COMMAND="/usr/local/bin/forgejo-mcp --transport stdio"');
  });

  test("the image runs as a user of its own, not root, owning the /data volume that BROKER_DATA_DIR names", () => {
    const user = all(final, "USER");
    expect(user).toEqual(["forgejo-mcp-broker"]);
    const run = all(final, "RUN").join(" ");
    expect(run).toMatch(/useradd --system --uid (\d+) .*forgejo-mcp-broker/);
    expect(run).toContain("install -d -m 0700 -o forgejo-mcp-broker -g forgejo-mcp-broker /data");
    expect(all(final, "VOLUME")).toEqual(["/data"]);
    expect(all(final, "ENV").join(" ")).toContain("BROKER_DATA_DIR=/data");
    expect(run).toContain("bubblewrap");
    const entrypoint = JSON.parse(all(final, "ENTRYPOINT")[0]!) as string[];
    expect(entrypoint).toEqual(["/usr/local/bin/bun", "run", "src/index.ts"]);
  });
});

/** A unit file's sections: each key with all its values in order. */
function unitOf(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | null = null;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const section = /^\[(\w+)\]$/.exec(line);
    if (section) {
      sections.set(section[1]!, (current = new Map()));
      continue;
    }
    const [, key, value] = /^([A-Za-z]+)=(.*)$/.exec(line)!;
    expect(current).not.toBeNull();
    current!.set(key!, [...(current!.get(key!) ?? []), value!]);
  }
  return sections;
}

describe("deploy/forgejo-mcp-broker.container (Quadlet)", () => {
  const unit = unitOf(read("deploy/forgejo-mcp-broker.container"));
  const container = unit.get("Container")!;
  const uid = /useradd --system --uid (\d+)/.exec(all(final, "RUN").join(" "))![1];

  test("runs the image with its data volume, published on loopback only", () => {
    expect([...unit.keys()]).toEqual(["Unit", "Container", "Service", "Install"]);
    expect(container.get("Image")).toEqual(["localhost/forgejo-mcp-broker:latest"]);
    expect(container.get("Volume")![0]).toEndWith(":/data");
    expect(container.get("PublishPort")).toEqual(["127.0.0.1:8080:8080"]);
  });

  test("hands both secrets over as files only the image's user reads, and points the broker at them", () => {
    const secrets = container.get("Secret")!.map((entry) => Object.fromEntries(entry.split(",").slice(1).map((kv) => kv.split("="))));
    expect(secrets).toHaveLength(2);
    for (const secret of secrets) expect(secret).toMatchObject({ type: "mount", uid, gid: uid, mode: "0400" });
    const env = container.get("Environment")!;
    expect(env).toContain(`FORGEJO_CLIENT_SECRET_FILE=${secrets[0]!.target}`);
    expect(env).toContain(`BROKER_SEALING_KEY_FILE=${secrets[1]!.target}`);
  });
});
