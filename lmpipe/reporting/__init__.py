"""The report page: what it reads (inputs), the figures it draws (figures) and the HTML (page)."""
