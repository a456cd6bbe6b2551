/* fastops/attention.h: causal self-attention of one kernel instance, document by document, and the exp
   it shares with the cross-entropy. Plain loops over token lanes, which the compiler vectorises for the
   instance's instruction set (measured: as fast as intrinsics would be here, at every instance). */

/* e^x within about an ulp, in plain arithmetic that the compiler vectorises (libm's exp is one call
   per element): x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series, 2^n written straight into
   the exponent bits. Exactly 0 below the smallest normal result, as for the masked scores (-inf). */
static inline TARGET real FN(vexp)(real x)
{
    const real xc = x > EXP_MAX ? EXP_MAX : x < -EXP_MAX ? -EXP_MAX : x;
    const real shifted = xc * (real)1.4426950408889634 + EXP_SHIFTER;   /* round(x / ln2) in the low bits */
    const real n = shifted - EXP_SHIFTER;
    const real r = (xc - n * (real)0.693145751953125) - n * (real)1.4286068203094173e-06;
    real p = (real)EXP_TAYLOR[EXP_DEGREE];
    for (int k = EXP_DEGREE - 1; k >= 0; k--) p = p * r + (real)EXP_TAYLOR[k];
    UINT bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits + EXP_BIAS) << EXP_MANTISSA;   /* (n + bias) in the exponent field */
    real scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -EXP_MAX ? 0 : p * scale;
}

/* ---- causal self-attention of one document, all heads ----
   Query positions are vector lanes: a document's T tokens are read where they lie in the batch's
   feature-major arrays, as TP = T rounded up to LANE_PAD lanes, and every loop runs over whole groups of
   lanes. For key j and query lane t, P[j][t] is the softmax weight (0 for j > t); it is kept for the
   backward pass. */

typedef struct {
    const Shape *s;
    const Batch *b;
    ptrdiff_t MP;
    const real *qkv, *dO, *att_saved;
    real *att, *o, *dqkv, *scratch;
} FN(AttnArgs);

/* Transposes the T x T corner of a (T x TP lanes) tile into another, zero-padding its lanes. */
static TARGET void FN(transpose_tile)(real *out, const real *in, ptrdiff_t ld, ptrdiff_t T, ptrdiff_t TP)
{
    for (ptrdiff_t t = 0; t < T; t++) {
        for (ptrdiff_t j = 0; j < T; j++) out[t * ld + j] = in[j * ld + t];
        for (ptrdiff_t j = T; j < TP; j++) out[t * ld + j] = 0;
    }
}

static TARGET void FN(attention_forward_doc)(const FN(AttnArgs) *a, int doc, real *scratch)
{
    const ptrdiff_t C = a->s->C, H = a->s->n_head, D = C / H, MP = a->MP, TPb = round_up(a->s->block, LANE_PAD);
    const ptrdiff_t s0 = a->b->doc_start[doc], T = a->b->doc_start[doc + 1] - s0, TP = round_up(T, LANE_PAD);
    const real scale = (real)1 / R_SQRT((real)D);
    (void)scratch;
    /* q, k, v read in place: rows of MP lanes from the document's first token (see attention_docs) */
    const real *q = a->qkv + s0, *k = q + C * MP, *v = k + C * MP;
    for (ptrdiff_t h = 0; h < H; h++) {
        const real *qh = q + h * D * MP, *kh = k + h * D * MP, *vh = v + h * D * MP;
        real *P = a->att + (s0 * H + h * T) * TPb;
        /* scores s_j[t] = q[t] . k_j / sqrt(D), -inf where j > t */
        FN(lanes_combine_rows)(P, TPb, TP, kh, 1, MP, qh, MP, D, TP, T);
        for (ptrdiff_t j = 0; j < T; j++) {
            real *Pj = P + j * TPb;
            for (ptrdiff_t t = 0; t < TP; t++) Pj[t] = t >= j ? Pj[t] * scale : -(real)INFINITY;
        }
        /* softmax over j, max-subtracted, lane by lane */
        for (ptrdiff_t t0 = 0; t0 < TP; t0 += LANE_PAD) {
            real top[LANE_PAD], total[LANE_PAD] = {0};
            memcpy(top, P + t0, sizeof top);
            for (ptrdiff_t j = 1; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) top[t] = P[j * TPb + t0 + t] > top[t] ? P[j * TPb + t0 + t] : top[t];
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) {
                    const real e = FN(vexp)(P[j * TPb + t0 + t] - top[t]);   /* 0 for the masked j > t */
                    P[j * TPb + t0 + t] = e;
                    total[t] += e;
                }
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) P[j * TPb + t0 + t] /= total[t];
        }
        /* o[t] = sum_j P_j[t] v_j */
        FN(lanes_combine_rows)(a->o + h * D * MP + s0, MP, T, vh, MP, 1, P, TPb, T, TP, D);
    }
}

/* Gradients of one document's attention: dQ, dK, dV into dqkv from dO and the saved weights P. */
static TARGET void FN(attention_backward_doc)(const FN(AttnArgs) *a, int doc, real *scratch)
{
    const ptrdiff_t C = a->s->C, H = a->s->n_head, D = C / H, MP = a->MP, TPb = round_up(a->s->block, LANE_PAD);
    const ptrdiff_t s0 = a->b->doc_start[doc], T = a->b->doc_start[doc + 1] - s0, TP = round_up(T, LANE_PAD);
    const real scale = (real)1 / R_SQRT((real)D);
    const real *q = a->qkv + s0, *k = q + C * MP, *v = k + C * MP, *dO = a->dO + s0;   /* in place */
    real *dS = scratch, *PT = dS + TPb * TPb, *dST = PT + TPb * TPb;
    for (ptrdiff_t h = 0; h < H; h++) {
        const real *qh = q + h * D * MP, *kh = k + h * D * MP, *vh = v + h * D * MP, *dOh = dO + h * D * MP;
        const real *P = a->att_saved + (s0 * H + h * T) * TPb;
        /* through o = sum_j P_j v_j:  dP_j[t] = dO[t] . v_j */
        FN(lanes_combine_rows)(dS, TPb, TP, vh, 1, MP, dOh, MP, D, TP, T);
        /* through the softmax: dS_j = P_j (dP_j - sum_i P_i dP_i) / sqrt(D); padding lanes t >= T get 0 */
        for (ptrdiff_t t0 = 0; t0 < TP; t0 += LANE_PAD) {
            real mean[LANE_PAD] = {0};
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) mean[t] += P[j * TPb + t0 + t] * dS[j * TPb + t0 + t];
            for (ptrdiff_t j = 0; j < T; j++)
                for (int t = 0; t < LANE_PAD; t++) {
                    const ptrdiff_t i = j * TPb + t0 + t;
                    dS[i] = t0 + t < T ? P[i] * (dS[i] - mean[t]) * scale : 0;
                }
        }
        /* through s_j = q . k_j:  dq[t] = sum_j dS_j[t] k_j */
        FN(lanes_combine_rows)(a->dqkv + h * D * MP + s0, MP, T, kh, MP, 1, dS, TPb, T, TP, D);
        /* dv_j = sum_t P_j[t] dO[t] and dk_j = sum_t dS_j[t] q[t]: keys become the lanes */
        FN(transpose_tile)(PT, P, TPb, T, TP);
        FN(transpose_tile)(dST, dS, TPb, T, TP);
        FN(lanes_combine_rows)(a->dqkv + (2 * C + h * D) * MP + s0, MP, T, dOh, MP, 1, PT, TPb, T, TP, D);
        FN(lanes_combine_rows)(a->dqkv + (C + h * D) * MP + s0, MP, T, qh, MP, 1, dST, TPb, T, TP, D);
    }
}

/* Documents begin .. end-1 one after another, forward or backward. q, k, v and dO are read in place, a
   document's TP lanes from its first token: the lanes past its T tokens belong to the next document (or
   padding, or, after the last row of dO, its LANE_PAD elements of slack); they only reach padding query
   lanes, whose results are never stored and whose score gradients are zeroed. (Copying each document into
   zero-padded tiles first cost a third of attention's instructions.) In a medium batch-32 step (AVX2,
   float64) attention takes ~1.7 ms, of which ~0.75 would remain with its data hot in cache (a second call
   at once: fwd 0.21 ms, bwd 0.56; the harness's names case agrees): the rest is the wait for q, k, v, P
   and dO from L3 and for dqkv's lines. Measured and left out: software prefetch of the next document's
   rows (the one line a row it adds), all at once or head by head, into L1 or L2: attention 0.92-1.03 of
   its time without, the step 0.99-1.005 (noise). */
static TARGET void FN(attention_docs)(const FN(AttnArgs) *a, ptrdiff_t begin, ptrdiff_t end, int thread, int backward)
{
    real *scratch = a->scratch + thread * FN(attention_scratch)(a->s);
    for (ptrdiff_t doc = begin; doc < end; doc++) {
        if (backward) FN(attention_backward_doc)(a, (int)doc, scratch);
        else FN(attention_forward_doc)(a, (int)doc, scratch);
    }
}

static TARGET void FN(attention_forward_task)(void *p, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    FN(attention_docs)(p, begin, end, thread, 0);
}

static TARGET void FN(attention_backward_task)(void *p, ptrdiff_t begin, ptrdiff_t end, int thread)
{
    FN(attention_docs)(p, begin, end, thread, 1);
}

