// A `ws` WebSocket that records the URLs it opened and the frames it sent, so tests can see
// what went over the wire (whether channels were named in the URL, which token was used).
import WebSocket from "ws";

export function recordingWebSocket() {
  const log = { urls: [], sent: [] };
  class RecordingWebSocket extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      log.urls.push(new URL(url));
    }
    send(data, ...rest) {
      log.sent.push(JSON.parse(data));
      return super.send(data, ...rest);
    }
  }
  return { WebSocket: RecordingWebSocket, log };
}
