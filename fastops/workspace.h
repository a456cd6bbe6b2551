/* fastops/workspace.h: one kernel instance's scratch memory for a batch, carved into named arrays. */

/* Per-thread attention scratch: the backward pass's three TPb x TPb tiles (dS, P^T, dS^T). */
static ptrdiff_t FN(attention_scratch)(const Shape *s)
{
    const ptrdiff_t TPb = round_up(s->block, LANE_PAD);
    return 3 * TPb * TPb;
}

/* Scratch of one batch. Feature-major arrays have rows of MP token lanes; per-layer arrays hold
   n_saved layers back to back (all layers when training, one reused layer when only evaluating). */
typedef struct {
    ptrdiff_t MP;
    real *x, *y0, *inv0;                                        /* residual stream; first RMSNorm */
    real *h1, *inv1, *qkv, *att, *o, *h2, *inv2, *u, *act;      /* per layer */
    real *logits, *lane_w, *lane_loss, *lane_a, *lane_b, *lane_c;
    real *dx, *dbig, *dsmall, *tok_major, *dx_tok, *g_rows;      /* backward temporaries */
    real *att_scratch;                                          /* per thread */
} FN(Work);

static size_t FN(carve)(FN(Work) *w, const Shape *s, ptrdiff_t MP, int n_saved, int n_threads, char *base)
{
    const ptrdiff_t C = s->C, F = 4 * C, L = n_saved, TPb = round_up(s->block, LANE_PAD);
    const ptrdiff_t big = (3 * C > F ? 3 * C : F) > s->vocab ? (3 * C > F ? 3 * C : F) : s->vocab;
    size_t used = 0;
#define TAKE(field, count) do { w->field = (real *)(base ? base + used : NULL); \
                                used += (size_t)round_up((count), 16) * sizeof(real); \
                                if (base) POISON(base + used, SCRATCH_GUARD); \
                                used += SCRATCH_GUARD; } while (0)
    w->MP = MP;
    TAKE(x, C * MP); TAKE(y0, C * MP); TAKE(inv0, MP);
    TAKE(h1, L * C * MP); TAKE(inv1, L * MP); TAKE(qkv, L * 3 * C * MP); TAKE(att, L * s->n_head * TPb * MP);
    TAKE(o, L * C * MP); TAKE(h2, L * C * MP); TAKE(inv2, L * MP); TAKE(u, L * F * MP); TAKE(act, L * F * MP);
    TAKE(logits, s->vocab * MP); TAKE(lane_w, MP); TAKE(lane_loss, MP);
    TAKE(lane_a, MP); TAKE(lane_b, MP); TAKE(lane_c, MP);
    TAKE(dx, C * MP); TAKE(dbig, big * MP); TAKE(dsmall, C * MP + LANE_PAD);   /* attention reads a whole lane group past its last row */ TAKE(tok_major, round_up(F, 64) * MP);   /* or X in panels: up to 63 features of zeros */ TAKE(dx_tok, (F + DX_SKEW) * MP);
    TAKE(g_rows, n_threads * F);
    TAKE(att_scratch, n_threads * FN(attention_scratch)(s));
#undef TAKE
    return used;
}

static size_t FN(workspace_bytes)(const Shape *s, ptrdiff_t MP, int saved_layers, int n_threads)
{
    FN(Work) w;
    return FN(carve)(&w, s, MP, saved_layers, n_threads, NULL);
}

