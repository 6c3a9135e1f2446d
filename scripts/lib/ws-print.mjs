// A stand-in for `websocat URL` in scripts/test-readme: connects to URL, prints every frame it
// receives on a line of its own, and creates OPEN_FILE (when given) once the socket is open.
// Exits when the server closes the connection, or on SIGTERM. Node 20's own WebSocket client.
//
//   node --experimental-websocket ws-print.mjs URL [OPEN_FILE]
import { writeFileSync } from "node:fs";

const [url, openFile] = process.argv.slice(2);
const ws = new WebSocket(url);
ws.onopen = () => { if (openFile) writeFileSync(openFile, "open\n"); };
ws.onmessage = (e) => console.log(e.data);
ws.onerror = () => {};
ws.onclose = (e) => { console.error(`closed: ${e.code} ${e.reason}`); process.exit(e.code === 1000 ? 0 : 1); };
process.on("SIGTERM", () => process.exit(0));
