-- The kind of client that asked and the context's language, for the dashboard's figures per client
-- kind and language (Store.breakdown); columns of their own because retention purges the context.
-- Rows from before this step were all the language server's; their language comes from the
-- context where it is JSON with a text "language".
ALTER TABLE completions ADD COLUMN client text NOT NULL DEFAULT 'lsp';
ALTER TABLE completions ADD COLUMN language text NOT NULL DEFAULT '';

DO $$
DECLARE
    row record;
BEGIN
    FOR row IN SELECT completion_id, context FROM completions LOOP
        BEGIN
            UPDATE completions SET language = row.context::jsonb ->> 'language'
            WHERE completion_id = row.completion_id
            AND jsonb_typeof(row.context::jsonb -> 'language') = 'string';
        EXCEPTION WHEN invalid_text_representation THEN
            NULL;  -- a context that is not JSON keeps language ''
        END;
    END LOOP;
END
$$;
