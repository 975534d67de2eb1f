import * as ProjectionStore from "../src/ProjectionStore.js"
import { projectionStoreSuite } from "./conformance/ProjectionStoreSuite.js"

projectionStoreSuite("ProjectionStore.layerMemory conformance", ProjectionStore.layerMemory)
