/**
 * How an address and port are written in log lines, messages and keys: `127.0.0.1:2100`, and
 * an IPv6 address in brackets, `[::1]:2100`, as in a URL - `::1:2100` reads as an address alone.
 */
export function hostPort(host: string, port: number | string): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
