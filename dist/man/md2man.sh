#!/bin/sh
# A man page from a header and a document of docs/ (go-md2man): the document's
# own first line (its "# title") gives way to the header's NAME, SYNOPSIS and
# DESCRIPTION, the rest of it is the page as it is.
#   md2man.sh HEADER.md DOC.md OUT
set -eu
{ cat "$1"; sed '1d' "$2"; } | go-md2man -out "$3"
