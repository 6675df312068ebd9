/**
 * The wire contract with the Flywheel language server beyond standard LSP 3.18: its one source
 * is lsp_server/protocol.py, documented in the README ("For editor-client authors").
 */

/** The command every inline completion item carries; its arguments are [completionId]. */
export const ACCEPT_COMMAND = "flywheel.accept";

/** Client → server notifications. */
export const DID_SHOW = "flywheel/didShowCompletion"; // {completionId}
export const DID_PARTIALLY_ACCEPT = "flywheel/didPartiallyAcceptCompletion"; // {completionId, acceptedLength}
export const DID_REJECT = "flywheel/didRejectCompletion"; // {completionId}

/** Server → client notification: {backend: "ok" | "unauthorized" | "unreachable", languages: [...]},
 * sent whenever either changes. */
export const DID_CHANGE_STATUS = "flywheel/didChangeStatus";

/** Client → server requests. */
export const STATUS_REQUEST = "flywheel/status";
export const FLUSH_REQUEST = "flywheel/flush";

/** initializationOptions key of a client that sends DID_SHOW itself. */
export const REPORTS_SHOWN_OPTION = "reportsShown";
