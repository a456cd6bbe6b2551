/* fastops/model.h: one kernel instance's whole model on a batch -- cross-entropy, the
   forward and backward passes in order -- and the instance's table of entry points (Kernels). */

/* ---- the whole model on one batch ---- */

/* Loss of every token lane and, with want_grad, dloss/dlogits in place of the logits: each token is
   weighted by lane_w = 1 / (n_docs * its document's length), padding lanes by 0. */
static TARGET void FN(cross_entropy)(const Shape *s, const Batch *b, FN(Work) *w, int want_grad)
{
    const ptrdiff_t V = s->vocab, MP = w->MP, M = b->M;
    real *L = w->logits, *top = w->lane_a, *total = w->lane_b, *picked = w->lane_c;
    for (ptrdiff_t t = 0; t < MP; t++) { top[t] = L[t]; total[t] = 0; picked[t] = 0; }
    for (ptrdiff_t v = 1; v < V; v++)
        for (ptrdiff_t t = 0; t < MP; t++) top[t] = L[v * MP + t] > top[t] ? L[v * MP + t] : top[t];
    for (ptrdiff_t t = 0; t < M; t++) picked[t] = L[b->target[t] * MP + t];
    for (ptrdiff_t v = 0; v < V; v++)
        for (ptrdiff_t t = 0; t < MP; t++) {
            const real e = FN(vexp)(L[v * MP + t] - top[t]);
            L[v * MP + t] = e;
            total[t] += e;
        }
    for (ptrdiff_t t = 0; t < MP; t++) w->lane_loss[t] = top[t] + R_LOG(total[t]) - picked[t];
    if (!want_grad) return;
    /* softmax - onehot(target), times the token's weight */
    for (ptrdiff_t t = 0; t < MP; t++) picked[t] = w->lane_w[t] / total[t];
    for (ptrdiff_t v = 0; v < V; v++)
        for (ptrdiff_t t = 0; t < MP; t++) L[v * MP + t] *= picked[t];
    for (ptrdiff_t t = 0; t < M; t++) L[b->target[t] * MP + t] -= w->lane_w[t];
}

/* Forward pass over a batch, then (MODE_GRAD, MODE_TRAIN) the backward pass. Returns the sum over
   documents of each document's mean token loss (the caller divides by n_docs); with MODE_LOGITS writes
   the last token's logits to logits_out instead. MODE_TRAIN updates the parameters with learning rate
   lr as each weight gradient is computed (g->step must already count this update). */
static TARGET double FN(run_batch)(Model *g, const Batch *b, int mode, double lr, double *logits_out)
{
    const Shape *s = &g->s;
    const ptrdiff_t C = s->C, F = 4 * C, V = s->vocab, H = s->n_head, M = b->M, MP = round_up(M, LANE_PAD);
    const ptrdiff_t TPb = round_up(s->block, LANE_PAD);
    const int train = mode == MODE_GRAD || mode == MODE_TRAIN;
    /* Small steps run on the calling thread: each of a step's ~50 kernels would cost less than handing
       it to the pool (measured: (16,1,8) one document, 9 us on one thread, 13 us on two). The results
       are the same bits either way. */
    Pool solo = {.n_threads = 1};
    Pool *pool = (double)s->n_params * M < POOL_MIN_WORK ? &solo : &g->pool;
    const real *P = g->buf[BUF_PARAMS];
    FN(Work) w;
    UNPOISON(g->work, g->work_bytes);   /* the gaps move with the batch size */
    FN(carve)(&w, s, MP, train ? s->n_layer : 1, pool->n_threads, g->work);
    FN(AttnArgs) attn = {s, b, MP, NULL, NULL, NULL, NULL, NULL, NULL, w.att_scratch};
    PROFILE_START();

    /* x = rmsnorm(wte[token] + wpe[position]); padding lanes start (and stay) finite */
    real *x0 = w.dsmall;
    for (ptrdiff_t t = 0; t < MP; t++)
        for (ptrdiff_t j = 0; j < C; j++)
            x0[j * MP + t] = t < M ? P[s->wte + b->input[t] * C + j] + P[s->wpe + b->pos[t] * C + j] : 0;
    FN(rmsnorm_forward)(x0, w.y0, w.inv0, C, MP);
    memcpy(w.x, w.y0, (size_t)(C * MP) * sizeof(real));
    PROFILE_LAP(&g->profile, PHASE_EMBED);

    for (int l = 0; l < s->n_layer; l++) {
        const real *W = P + layer_offset(s, l);
        const ptrdiff_t sl = train ? l : 0;
        real *h1 = w.h1 + sl * C * MP, *inv1 = w.inv1 + sl * MP, *qkv = w.qkv + sl * 3 * C * MP;
        real *att = w.att + sl * H * TPb * MP, *o = w.o + sl * C * MP, *h2 = w.h2 + sl * C * MP;
        real *inv2 = w.inv2 + sl * MP, *u = w.u + sl * F * MP, *act = w.act + sl * F * MP;
        /* x = x + Wo attention(rmsnorm(x)) */
        FN(rmsnorm_forward)(w.x, h1, inv1, C, MP);
        PROFILE_LAP(&g->profile, PHASE_NORM_ACT);
        FN(linear_forward)(pool, W + OFF_WQKV(s), 3 * C, C, h1, qkv, MP, 0);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_FORWARD);
        attn.qkv = qkv; attn.att = att; attn.o = o;
        parallel_for(pool, FN(attention_forward_task), &attn, b->n_docs, 1);
        for (ptrdiff_t f = 0; f < C; f++)
            for (ptrdiff_t t = M; t < MP; t++) o[f * MP + t] = 0;
        PROFILE_LAP(&g->profile, PHASE_ATTENTION);
        FN(linear_forward)(pool, W + OFF_WO(s), C, C, o, w.x, MP, 1);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_FORWARD);
        /* x = x + W2 act(W1 rmsnorm(x)) */
        FN(rmsnorm_forward)(w.x, h2, inv2, C, MP);
        PROFILE_LAP(&g->profile, PHASE_NORM_ACT);
        FN(linear_forward)(pool, W + OFF_FC1(s), F, C, h2, u, MP, 0);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_FORWARD);
        FN(mlp_act_forward)(u, act, F * MP, s->relu2);
        PROFILE_LAP(&g->profile, PHASE_NORM_ACT);
        FN(linear_forward)(pool, W + OFF_FC2(s), C, F, act, w.x, MP, 1);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_FORWARD);
    }
    FN(linear_forward)(pool, P + s->lm_head, V, C, w.x, w.logits, MP, 0);
    PROFILE_LAP(&g->profile, PHASE_LINEAR_FORWARD);

    if (mode == MODE_LOGITS) {
        for (ptrdiff_t v = 0; v < V; v++) logits_out[v] = (double)w.logits[v * MP + M - 1];
        return 0.0;
    }
    for (ptrdiff_t t = 0; t < MP; t++) w.lane_w[t] = 0;
    for (int d = 0; d < b->n_docs; d++) {
        const int T = b->doc_start[d + 1] - b->doc_start[d];
        for (int t = b->doc_start[d]; t < b->doc_start[d + 1]; t++) w.lane_w[t] = (real)(1.0 / b->n_docs / T);
    }
    FN(cross_entropy)(s, b, &w, train);
    double loss = 0.0;
    for (int d = 0; d < b->n_docs; d++) {
        double doc_loss = 0.0;
        for (int t = b->doc_start[d]; t < b->doc_start[d + 1]; t++) doc_loss += (double)w.lane_loss[t];
        loss += doc_loss / (b->doc_start[d + 1] - b->doc_start[d]);
    }
    PROFILE_LAP(&g->profile, PHASE_CROSS_ENTROPY);
    if (!train) return loss;

    /* Backward. dx is the gradient of the residual stream, feature-major like x. Each weight matrix
       is read for its input gradient before its own gradient (and, in MODE_TRAIN, its update). */
    real *G = g->buf[BUF_GRADS], *dlogits = w.logits;
    const FN(AdamArgs) update = FN(adam_args)(g, lr, 1.0), *adam = mode == MODE_TRAIN ? &update : NULL;
    FN(linear_backward)(pool, &w, P + s->lm_head, G + s->lm_head, V, C, dlogits, w.x, w.dx, M, adam);
    PROFILE_LAP(&g->profile, PHASE_LINEAR_BACKWARD);
    for (int l = s->n_layer - 1; l >= 0; l--) {
        const real *W = P + layer_offset(s, l);
        real *dW = G + layer_offset(s, l);
        const real *h1 = w.h1 + l * C * MP, *inv1 = w.inv1 + l * MP, *qkv = w.qkv + l * 3 * C * MP;
        const real *att = w.att + l * H * TPb * MP, *o = w.o + l * C * MP, *h2 = w.h2 + l * C * MP;
        const real *inv2 = w.inv2 + l * MP, *u = w.u + l * F * MP, *act = w.act + l * F * MP;
        real *dact = w.dbig, *dqkv = w.dbig, *dh = w.dsmall, *dO = w.dsmall;
        /* MLP */
        FN(linear_backward)(pool, &w, W + OFF_FC2(s), dW + OFF_FC2(s), C, F, w.dx, act, dact, M, adam);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_BACKWARD);
        FN(mlp_act_backward)(u, dact, F * MP, s->relu2);
        PROFILE_LAP(&g->profile, PHASE_NORM_ACT);
        FN(linear_backward)(pool, &w, W + OFF_FC1(s), dW + OFF_FC1(s), F, C, dact, h2, dh, M, adam);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_BACKWARD);
        FN(rmsnorm_backward)(h2, inv2, dh, w.dx, w.lane_a, C, MP, 1);
        PROFILE_LAP(&g->profile, PHASE_NORM_ACT);
        /* attention */
        FN(linear_backward)(pool, &w, W + OFF_WO(s), dW + OFF_WO(s), C, C, w.dx, o, dO, M, adam);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_BACKWARD);
        attn.qkv = qkv; attn.att_saved = att; attn.dO = dO; attn.dqkv = dqkv;
        parallel_for(pool, FN(attention_backward_task), &attn, b->n_docs, 1);
        PROFILE_LAP(&g->profile, PHASE_ATTENTION);
        FN(linear_backward)(pool, &w, W + OFF_WQKV(s), dW + OFF_WQKV(s), 3 * C, C, dqkv, h1, dh, M, adam);
        PROFILE_LAP(&g->profile, PHASE_LINEAR_BACKWARD);
        FN(rmsnorm_backward)(h1, inv1, dh, w.dx, w.lane_a, C, MP, 1);
        PROFILE_LAP(&g->profile, PHASE_NORM_ACT);
    }
    /* the first RMSNorm, then scatter into the embedding rows the batch used */
    real *dx0 = w.dsmall;
    FN(rmsnorm_backward)(w.y0, w.inv0, w.dx, dx0, w.lane_a, C, MP, 0);
    PROFILE_LAP(&g->profile, PHASE_NORM_ACT);
    memset(G + s->wte, 0, (size_t)(s->layers - s->wte) * sizeof(real));
    for (ptrdiff_t t = 0; t < M; t++)
        for (ptrdiff_t j = 0; j < C; j++) {
            G[s->wte + b->input[t] * C + j] += dx0[j * MP + t];
            G[s->wpe + b->pos[t] * C + j] += dx0[j * MP + t];
        }
    if (adam) FN(adam_range)(adam, s->wte, s->layers);
    PROFILE_LAP(&g->profile, PHASE_EMBED);
    return loss;
}

/* Sum of squared gradients, in double and in buffer order. */
static TARGET double FN(grad_sq_norm)(Model *g)
{
    const real *G = g->buf[BUF_GRADS];
    double sum = 0.0;
    for (ptrdiff_t i = 0; i < g->s.n_params; i++) sum += (double)G[i] * (double)G[i];
    return sum;
}

static const Kernels FN(kernels) = {ISA_NAME, FN(workspace_bytes), FN(run_batch), FN(grad_sq_norm), FN(adam)};

