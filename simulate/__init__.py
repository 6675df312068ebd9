"""`flywheel simulate`: simulated developers write real code through the real language server.

Each developer is an LSP client over stdio driving `python -m lsp_server` against a real backend
process; a real `flywheel trainer --once` runs between rounds. Modules, one job each:
    profiles    how a simulated person behaves (patience, tolerance, speed, adversarial)
    corpus      which files are typed, and the fixed held-out evaluation set
    editor      the LSP client: documents, positions, completions, Flywheel notifications
    developer   one person typing one file, asking for and judging suggestions
    services    the backend and trainer processes and the HTTP figures read from the backend
    report      per-cycle figures, the CSV and the PNG plot
    run         the rounds and cycles, and the command's entry point
"""
