"""`dbsnap capture`: a masked, foreign-key-whole copy of a live database, stored as an ordinary dump."""
