-- No query reads collectors by `name`: the text search matches anywhere in it (ILIKE '%…%'),
-- and sorting by name sorts the display name label before it. The index only cost every new
-- collector an entry (and any update that changes a name, which cannot then be in place).
DROP INDEX collectors_name;
