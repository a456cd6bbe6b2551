/* fastops/tokens.h: the per-token operations of one kernel instance on feature-major arrays (RMSNorm,
   the MLP activation, e^x). Each is a loop over contiguous token lanes, written once in plain C: with
   the instance's TARGET the compiler vectorises it for that instruction set. */

/* ---- per-token operations on feature-major arrays: loops over MP contiguous lanes ---- */

/* y = x / sqrt(mean(x^2) + eps) for every token; inv keeps 1 / sqrt(...) for the backward pass. */
static TARGET void FN(rmsnorm_forward)(const real *x, real *y, real *inv, ptrdiff_t C, ptrdiff_t MP)
{
    for (ptrdiff_t t = 0; t < MP; t++) inv[t] = 0;
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) inv[t] += x[j * MP + t] * x[j * MP + t];
    for (ptrdiff_t t = 0; t < MP; t++) inv[t] = (real)1 / R_SQRT(inv[t] / (real)C + (real)RMS_EPS);
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) y[j * MP + t] = x[j * MP + t] * inv[t];
}

/* dx (+)= inv * (dy - y * mean(y * dy)), the RMSNorm gradient written with its output y = x * inv. */
static TARGET void FN(rmsnorm_backward)(const real *y, const real *inv, const real *dy, real *dx, real *tmp,
                                        ptrdiff_t C, ptrdiff_t MP, int accumulate)
{
    for (ptrdiff_t t = 0; t < MP; t++) tmp[t] = 0;
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) tmp[t] += y[j * MP + t] * dy[j * MP + t];
    for (ptrdiff_t t = 0; t < MP; t++) tmp[t] /= (real)C;
    for (ptrdiff_t j = 0; j < C; j++)
        for (ptrdiff_t t = 0; t < MP; t++) {
            real g = inv[t] * (dy[j * MP + t] - y[j * MP + t] * tmp[t]);
            dx[j * MP + t] = accumulate ? dx[j * MP + t] + g : g;
        }
}

/* act = relu(u)^2 or relu(u), elementwise. */
static TARGET void FN(mlp_act_forward)(const real *u, real *act, ptrdiff_t n, int relu2)
{
    if (relu2)
        for (ptrdiff_t i = 0; i < n; i++) act[i] = u[i] > 0 ? u[i] * u[i] : 0;
    else
        for (ptrdiff_t i = 0; i < n; i++) act[i] = u[i] > 0 ? u[i] : 0;
}

/* d = d * act'(u), in place: 2u for relu^2, 1 for relu, 0 where u <= 0. */
static TARGET void FN(mlp_act_backward)(const real *u, real *d, ptrdiff_t n, int relu2)
{
    if (relu2)
        for (ptrdiff_t i = 0; i < n; i++) d[i] = u[i] > 0 ? (real)2 * u[i] * d[i] : 0;
    else
        for (ptrdiff_t i = 0; i < n; i++) d[i] = u[i] > 0 ? d[i] : 0;
}

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

