"""`python -m lsp_server`: the language server on stdio (same as `flywheel lsp`)."""

from lsp_server.server import main

main()
