// Typed use of the TypeScript types generated from openapi.yaml by openapi-typescript.
// `tsc --strict` must accept it; renaming or retyping a key the reference fixes breaks it.
import type { components, paths } from "./cockpit";

type Json<P extends keyof paths, M extends keyof paths[P]> = paths[P][M];

type LoginBody = components["schemas"]["LoginRequest"];
type TokenPair = components["schemas"]["TokenPair"];
type HostList = components["schemas"]["HostList"];
type Vm = components["schemas"]["Vm"];
type MigrateBody = components["schemas"]["MigrateRequest"];
type MigrationAccepted = components["schemas"]["MigrationAccepted"];
type Problem = components["schemas"]["Problem"];

const login: LoginBody = { username: "admin", password: "admin" };

function useTokens(t: TokenPair): string {
  const seconds: number = t.expires_in;
  const refresh: string = t.refresh_token;
  return `${t.token} ${refresh} ${seconds}`;
}

function firstHost(list: HostList): string {
  const h = list.hosts[0];
  const cursor: number = h.sync_cursor;
  const status: "connected" | "disconnected" = h.status;
  return `${h.id} ${h.hostname} ${status} ${cursor}`;
}

const start: components["schemas"]["ActionRequest"] = { action: "start" };
const forceStop: components["schemas"]["ActionRequest"] = { action: "stop", force: true };

const migrate: MigrateBody = {
  destination_host_id: "019e0014-ffff-7057-b326-000000000002",
  live: true,
  persistent: true,
  undefine_source: true,
  copy_storage: "none",
};

function accepted(m: MigrationAccepted): string {
  const s: "initiated" = m.status;
  return `${m.migration_id} ${s}`;
}

function vmLine(vm: Vm): string {
  const where: string = vm.host_id;
  const job: string | null = vm.migration_id;
  return `${vm.name} ${vm.status} ${where} ${job ?? "-"}`;
}

function problemLine(p: Problem): string {
  return `${p.status} ${p.code}: ${p.detail}`;
}

// Named enums and the validation errors member.
const action: components["schemas"]["VmAction"] = "restart";
const copy: components["schemas"]["CopyStorage"] = "all";
function fieldErrors(p: Problem): string {
  const code: components["schemas"]["ProblemCode"] = p.code;
  const first: string = (p.errors ?? []).map((e) => `${e.pointer}: ${e.detail}`).join("; ");
  return code === "invalid_cursor" ? "restart the listing" : first;
}

type ListVmsQuery = NonNullable<Json<"/vms", "get">["parameters"]["query"]>;
const query: ListVmsQuery = { limit: 100, status: "running" };

export {
  login, useTokens, firstHost, start, forceStop, migrate, accepted, vmLine, problemLine, query,
  action, copy, fieldErrors,
};
