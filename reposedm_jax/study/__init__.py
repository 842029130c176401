"""Human perception study (paper §4.2, Fig. 7): build a static web page from image folders, score the answers.

  python -m reposedm_jax.study build --real DIR --generated NAME=DIR [NAME=DIR ...] --pairs FILE --out STUDY
  python -m reposedm_jax.study score STUDY responses/*.json

Modules: `inputs` (pairs and image lookup), `plan` (the seeded, balanced trial plan), `stimuli` (images
re-encoded under content hashes, pose renders, catch-trial scrambles), `page` (index.html from `page.html`),
`build` (the build command), `responses` (reading and checking answer files), `score` (R2G, G2R, JAB with
bootstrap intervals and the exclusion rule), `report` (Markdown and JSON) and `chart` (the Fig. 7-like PNG).
"""
